"""Import-time stand-in for PyAV on the device machine only (its image lacks `av`, and the wheel alone is larger
than what a device call may carry). ComfyUI 0.3.75 imports `av` at module level in comfy_api.latest for its video
and audio nodes; nothing the device check runs opens a media file. Any attribute is a placeholder class."""


def __getattr__(name: str) -> type:
    return type(name, (), {})
