"""Where the pack's files live in a ComfyUI install: bank files, SAM checkpoints, the LLM planner's cache."""

from __future__ import annotations

import os

import folder_paths

from ...r2moe_core.compose.masks.sam_loader import SAM_EXTENSIONS, expected_files_hint
from ...r2moe_core.errors import InvalidInputError

BANK_FOLDER = "r2moe"
SAM_FOLDER = "sams"
LORA_FOLDER = "loras"  # ComfyUI's own folder name


def register_model_folder() -> None:
    """`models/r2moe` (plus any `r2moe:` entry of extra_model_paths.yaml) for bank files."""
    path = os.path.join(folder_paths.models_dir, BANK_FOLDER)
    if BANK_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[BANK_FOLDER] = ([path], {".safetensors"})
    else:
        folder_paths.add_model_folder_path(BANK_FOLDER, path)


def resume_folder() -> str:
    """Where interrupted training runs keep their checkpoints: `resume/` in the first bank folder."""
    return os.path.join(folder_paths.get_folder_paths(BANK_FOLDER)[0], "resume")


def register_sam_folder() -> None:
    """`models/sams` (shared with other packs that use SAM) for Segment Anything checkpoints."""
    path = os.path.join(folder_paths.models_dir, SAM_FOLDER)
    if SAM_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[SAM_FOLDER] = ([path], set(SAM_EXTENSIONS))
        return
    folder_paths.add_model_folder_path(SAM_FOLDER, path)
    extensions = folder_paths.folder_names_and_paths[SAM_FOLDER][1]
    if isinstance(extensions, set):  # another pack registered it: make sure our formats are listed too
        extensions.update(SAM_EXTENSIONS)


def sam_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list(SAM_FOLDER) if f.endswith(SAM_EXTENSIONS)]


def sam_path(name: str) -> str:
    path = folder_paths.get_full_path(SAM_FOLDER, name) if name else None
    if path is None or not os.path.isfile(path):
        folders = folder_paths.get_folder_paths(SAM_FOLDER)
        listed = ", ".join(sam_files()) or "none"
        raise InvalidInputError(
            f"SAM checkpoint '{name}' is not in models/sams (folders: {folders}; files there: {listed}). Copy one of "
            f"the Segment Anything checkpoints there: {expected_files_hint()}, then refresh the page."
        )
    return path


def lora_path(name: str) -> str:
    """The file of a LoRA in models/loras (ComfyUI's own folder and extensions)."""
    path = folder_paths.get_full_path(LORA_FOLDER, name) if name else None
    if path is None:
        raise InvalidInputError(
            f"LoRA '{name[:200]}' is not in models/loras (folders: {folder_paths.get_folder_paths(LORA_FOLDER)}). "
            "Copy the file there and refresh the page."
        )
    return path


def bank_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list(BANK_FOLDER) if f.endswith(".safetensors")]


def bank_path(name: str) -> str:
    """The file of a listed bank; any other name (a save's temporary file, a path, a typo) is refused."""
    path = folder_paths.get_full_path(BANK_FOLDER, name) if name in bank_files() else None
    if path is None:
        raise InvalidInputError(
            f"Bank '{name[:200]}' is not a bank in models/r2moe "
            f"(folders: {folder_paths.get_folder_paths(BANK_FOLDER)}). "
            "Save one with R2MoE Save Bank, or refresh the page after copying a file there."
        )
    return path


def bank_name_check(name: str) -> bool | str:
    """`validate_inputs` for a bank_name combo: the pinned host does not check posted combo values itself."""
    try:
        bank_path(name)
    except InvalidInputError as err:
        return str(err)
    return True


def bank_dir() -> str:
    return folder_paths.get_folder_paths(BANK_FOLDER)[0]


def _cache_dir(name: str) -> str:
    """A system-user folder (never served over HTTP, kept across restarts), else temp."""
    getter = getattr(folder_paths, "get_system_user_directory", None)
    if getter is not None:
        return os.path.join(getter("r2moe"), name)
    return os.path.join(folder_paths.get_temp_directory(), f"r2moe_{name}")


def planner_cache_dir() -> str:
    """Where LLM layout answers are cached."""
    return _cache_dir("planner_cache")


def class_prior_dir() -> str:
    """Where class-prior latents are cached (outside models/r2moe, so they never show up as banks)."""
    return _cache_dir("class_priors")
