// The pack's templates for ComfyUI's template browser (example_workflows/): which API workflow each one is made
// from, what its note tells the user to set, and the values a user would start from.

export const TEMPLATES = [
  {
    name: "r2moe_1_learn_two_concepts",
    api: "api_train_two_concepts.json",
    title: "R2MoE 1: learn two concepts",
    note: `## Learn two concepts into one bank

1. **Load Checkpoint**: pick your SD1.5 checkpoint.
2. **R2MoE Train Concept** (both): set \`folder\` to a folder of 3 to 7 photos of your concept (an optional
   \`caption.txt\` holds one caption per image, \`<new1>\` standing for the concept), a \`concept_name\`, a
   \`trigger_token\` (one word, e.g. \`<dog1>\`) and the \`class_word\`.
3. Queue. Each concept takes a few minutes on a GPU (800 steps at 512 px); the bank is saved as
   \`models/r2moe/two_concepts.safetensors\` and both concepts are drawn with a stock KSampler. While a concept
   trains, its node shows the concept drawn with what it has learned so far beside the loss curve (every
   \`preview_every\` steps); the last one is saved next to the loss curve.

Queuing again re-trains nothing: change an input to train again. After Cancel, queuing again continues from the
last checkpoint (every \`checkpoint_every\` steps).`,
    values: {
      CheckpointLoaderSimple: { ckpt_name: "v1-5-pruned-emaonly-fp16.safetensors" },
      EmptyLatentImage: { width: 512, height: 512 },
    },
    folders: ["/path/to/photos/of/concept_a", "/path/to/photos/of/concept_b"],
  },
  {
    name: "r2moe_2_two_concepts_one_image",
    api: "api_regional_two_concepts.json",
    title: "R2MoE 2: two concepts in one image",
    note: `## Two concepts in one image, each in its own box

Needs a bank with two concepts (template 1 saves \`two_concepts.safetensors\`).

1. **Load Checkpoint**: the checkpoint the bank was trained on.
2. **R2MoE Load Bank**: your bank. **R2MoE Layout Planner**: write the scene with the trigger tokens
   (\`<a1>\`, \`<b1>\`: the ones your bank knows); the rule-based planner boxes each one, the LLM planner asks
   an OpenAI-compatible server (the key comes from the environment variable you name, never from the workflow).
3. Queue: **R2MoE Regional Apply** gives each box its own concept; the layout preview shows the boxes.`,
    values: { CheckpointLoaderSimple: { ckpt_name: "v1-5-pruned-emaonly-fp16.safetensors" } },
  },
  {
    name: "r2moe_3_edit_boxes_and_refine_with_sam",
    api: "api_regional_hierarchical.json",
    title: "R2MoE 3: edit the boxes, refine with SAM",
    note: `## Draw the regions yourself, then let SAM refine them

1. **Load Checkpoint**: your SD1.5 checkpoint. **R2MoE New Bank** can be replaced by **R2MoE Load Bank**.
2. **R2MoE Layout From JSON**: drag on the canvas to draw a box, drag a box to move it, its corners to
   resize, Delete to remove it; give each box its prompt (with a trigger token of your bank) below the canvas.
   The JSON above is what is saved.
3. **R2MoE SAM Loader**: put a Segment Anything file (\`sam_vit_b_01ec64.pth\`, \`sam_vit_l_0b3195.pth\` or
   \`sam_vit_h_4b8939.pth\`) in \`models/sams\` and pick it.
4. Queue: boxes guide the first steps, SAM's masks the rest (\`switch_at\`).`,
    values: {
      CheckpointLoaderSimple: { ckpt_name: "v1-5-pruned-emaonly-fp16.safetensors" },
      R2MoESAMLoader: { sam_name: "sam_vit_b_01ec64.pth" },
    },
  },
  {
    name: "r2moe_4_inspect_a_bank",
    api: "api_inspect_bank.json",
    title: "R2MoE 4: inspect a bank",
    note: `## What a bank holds, and where a prompt routes

1. **Load Checkpoint**: the checkpoint the bank was trained on (its CLIP encodes the prompt).
2. **R2MoE Load Bank**: your bank.
3. **R2MoE Gate Map**: a prompt with a trigger token. Queue: the heat map shows, per layer (K left, V right),
   the weight each expert gets for that prompt; **R2MoE Bank Info** shows where each concept's expert survived
   pruning, and a gallery of the concepts: each one's picture (the last preview of its training), name, trigger
   token and size.`,
    values: { CheckpointLoaderSimple: { ckpt_name: "v1-5-pruned-emaonly-fp16.safetensors" } },
  },
];
