"""Tiny random chat models saved like hub checkpoints, built offline in well under a second.

`save_tiny_gemma3(dir)` writes a multimodal Gemma3ForConditionalGeneration (SigLIP tower, Gemma's special
tokens, its real chat template); `save_tiny_llama(dir)` a text-only LlamaForCausalLM with the same tokenizer.
Both load through the Auto* classes exactly as a downloaded model would. The tokenizer is a small BPE trained
here on a few sentences, so nothing is fetched from the hub. Used by the tests and bench/llm_speed.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

# Gemma's ids for the first ones (pad 0, eos 1, bos 2), so the Gemma 3 config defaults fit.
SPECIAL_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
PAD, EOS, BOS, END_OF_TURN, BOI, EOI, IMAGE = 0, 1, 2, 6, 7, 8, 9

CORPUS = (
    "The classifier thinks this photo shows ramen, with 87% confidence.",
    "Spaghetti is long, thin and round; udon is thick and white; ramen is wavy and yellow.",
    "The heatmap is brightest on the noodles in the bowl, not on the chopsticks or the table.",
    "Why did the model confuse udon with ramen? The broth and the bowl look alike.",
    "You are a helpful assistant that explains an image classifier's decisions in plain words.",
    "Answer in two or three sentences. Say what the evidence is and how sure the model is.",
    "0 1 2 3 4 5 6 7 8 9 % . , ; : ? ! ( ) - ' \" / = + #",
)

# Gemma 3's chat template as shipped with google/gemma-3-4b-it (a system prompt joins the first user turn).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)


def build_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A Gemma-style BPE tokenizer (spaces as '▁', the corpus's characters) with Gemma's special tokens."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse()])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    backend.train_from_iterator([*CORPUS, "\n"], trainer)
    assert [backend.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        # The names Gemma3Processor reads (tokenizer.boi_token, ...), as in gemma-3's tokenizer_config.json.
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        padding_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )


def _generation_config() -> GenerationConfig:
    # As gemma-3-4b-it's: stop at <eos> or <end_of_turn>.
    return GenerationConfig(bos_token_id=BOS, eos_token_id=[EOS, END_OF_TURN], pad_token_id=PAD)


def gemma3_config(
    vocab_size: int = 320,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    mm_tokens_per_image: int = 4,
    vision: dict[str, Any] | None = None,
    **text: Any,
) -> Gemma3Config:
    """A Gemma 3 config of the given size (`text`, `vision`: more config values); token ids are ours."""
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "query_pre_attn_scalar": 32,
        "sliding_window": 64,
        "max_position_embeddings": 2048,
        **text,
    }
    vision_config = {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch_size,
        "vision_use_head": False,
        **(vision or {}),
    }
    return Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=mm_tokens_per_image,
        boi_token_index=BOI,
        eoi_token_index=EOI,
        image_token_index=IMAGE,
    )


def save_gemma3(
    path: str | Path,
    config: Gemma3Config,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> Path:
    """A random Gemma3ForConditionalGeneration of `config` with tokenizer, image processor and processor.

    `device`: where the random weights are drawn (a GPU draws billions of them in seconds).
    """
    path = Path(path)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Gemma3ForConditionalGeneration(config).to(dtype).eval()
    model.generation_config = _generation_config()
    model.save_pretrained(path)
    size = config.vision_config.image_size
    image_processor = Gemma3ImageProcessor(
        size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    tokenizer = build_tokenizer()
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=config.mm_tokens_per_image,
    )
    processor.save_pretrained(path)
    return path


def save_tiny_gemma3(path: str | Path, seed: int = 0, **config: Any) -> Path:
    """A tiny multimodal Gemma 3 (2 layers, hidden 64, 32 px images as 4 tokens) saved in `path`."""
    return save_gemma3(path, gemma3_config(**config), seed)


def save_tiny_llama(
    path: str | Path, seed: int = 0, hidden_size: int = 64, num_hidden_layers: int = 2
) -> Path:
    """A tiny text-only LlamaForCausalLM with the same tokenizer and chat template, saved in `path`."""
    path = Path(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config = _generation_config()
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def save_endless_llama(path: str | Path, seed: int = 0) -> Path:
    """The tiny Llama with room for a long prompt (4096 positions: RoPE learns none) and no way to end an
    answer early (its end tokens suppressed in its generation config): it writes until max_new_tokens."""
    import json

    path = save_tiny_llama(path, seed)
    for name, changes in (("config.json", {"max_position_embeddings": 4096}),
                          ("generation_config.json", {"suppress_tokens": [EOS, END_OF_TURN]})):  # fmt: skip
        config = json.loads((path / name).read_text())
        (path / name).write_text(json.dumps({**config, **changes}))
    return path
