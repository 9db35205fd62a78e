"""Hugging Face hub plumbing for laion_clap, offline only.

laion_clap loads three tokenizers at *import* (bert-base-uncased, roberta-base, facebook/bart-base) and, when a
`CLAP_Module` is built, the roberta-base tokenizer and `RobertaModel.from_pretrained('roberta-base')` (its text
projection is hard-wired to 768 inputs). valor never lets it reach the network: `offline_hub()` sets HF_HUB_OFFLINE=1
(and optionally HF_HUB_CACHE) in the environment *and* in `huggingface_hub.constants`, which reads them once at import,
so the setting holds even when something imported huggingface_hub earlier in the process.

`write_tiny_hf_cache(root)` writes small stand-ins for those three repositories in the hub cache layout
(`models--<org>--<name>/refs/main`, `snapshots/<rev>/...`): byte-level BPE tokenizers for roberta/bart, a WordPiece
vocabulary for bert, and a random 2-layer, 768-hidden RoBERTa. Deterministic, offline, about a second.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import string
from pathlib import Path
from typing import Iterator, Optional

TOKENIZER_REPOS = ("bert-base-uncased", "roberta-base", "facebook/bart-base")
MODEL_REPO = "roberta-base"


@contextlib.contextmanager
def offline_hub(cache_dir: Optional[str] = None, keep: bool = False) -> Iterator[None]:
    """Within the block: HF_HUB_OFFLINE=1 and (if given) HF_HUB_CACHE=cache_dir, in os.environ and in the already
    imported huggingface_hub constants. Restored on exit unless keep=True."""
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    if cache_dir is not None:
        os.environ["HF_HUB_CACHE"] = str(cache_dir)
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - laion_clap would fail anyway
        constants = None
    saved_const = None
    if constants is not None:
        saved_const = (constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE)
        constants.HF_HUB_OFFLINE = True
        if cache_dir is not None:
            constants.HF_HUB_CACHE = str(cache_dir)
    try:
        yield
    finally:
        if not keep:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            if constants is not None and saved_const is not None:
                constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = saved_const


def hub_cache_dir() -> str:
    """The hub cache in effect now (huggingface_hub's constant if imported, else the environment's default)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return os.environ.get("HF_HUB_CACHE", os.path.expanduser("~/.cache/huggingface/hub"))


def missing_hub_repos(cache_dir: Optional[str] = None) -> list[str]:
    """Which of the repositories laion_clap needs have no snapshot in the hub cache."""
    root = Path(cache_dir or hub_cache_dir())
    missing = []
    for repo in (*TOKENIZER_REPOS,):
        folder = root / ("models--" + repo.replace("/", "--"))
        if not (folder / "refs" / "main").exists():
            missing.append(repo)
    return missing


# --- tiny stand-ins ------------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _bpe_files() -> tuple[dict[str, int], str]:
    """A byte-level BPE vocabulary: specials, the 256 byte symbols, and merges for the lower-case letter pairs."""
    vocab: dict[str, int] = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    byte_chars = list(_bytes_to_unicode().values())
    for ch in byte_chars:
        vocab.setdefault(ch, len(vocab))
    merges = []
    space = _bytes_to_unicode()[ord(" ")]
    for a in string.ascii_lowercase:  # "Ġa" etc.: word-initial letters become one token
        merges.append(f"{space} {a}")
        vocab.setdefault(space + a, len(vocab))
    vocab["<mask>"] = len(vocab)
    return vocab, "#version: 0.2\n" + "\n".join(merges) + "\n"


def _snapshot(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    rev = hashlib.sha1(("valor-tiny:" + repo).encode()).hexdigest()
    folder = root / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(rev)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


def tiny_roberta_config(vocab_size: int, layers: int = 2) -> dict:
    return {
        "architectures": ["RobertaModel"], "model_type": "roberta", "vocab_size": vocab_size, "hidden_size": 768,
        "num_hidden_layers": layers, "num_attention_heads": 12, "intermediate_size": 768,
        "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0,
        "eos_token_id": 2, "layer_norm_eps": 1e-5, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
    }


def write_tiny_hf_cache(root: str | os.PathLike, seed: int = 0, layers: int = 2) -> Path:
    """Write tiny roberta-base / bart-base / bert-base-uncased stand-ins under `root` (a hub cache); returns root."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    vocab, merges = _bpe_files()
    j = lambda d: json.dumps(d, indent=1, sort_keys=True).encode()  # noqa: E731
    bpe_special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                   "cls_token": "<s>", "pad_token": "<pad>", "mask_token": "<mask>"}
    rcfg = tiny_roberta_config(len(vocab), layers)
    snap = _snapshot(root, MODEL_REPO, {
        "vocab.json": j(vocab), "merges.txt": merges.encode(),
        "tokenizer_config.json": j({"model_max_length": 512, "tokenizer_class": "RobertaTokenizer", **bpe_special}),
        "special_tokens_map.json": j(bpe_special),
    })
    torch.manual_seed(seed)
    model = RobertaModel(RobertaConfig(**rcfg))
    model.save_pretrained(snap, safe_serialization=True)
    _snapshot(root, "facebook/bart-base", {
        "vocab.json": j(vocab), "merges.txt": merges.encode(),
        "tokenizer_config.json": j({"model_max_length": 1024, "tokenizer_class": "BartTokenizer", **bpe_special}),
        "special_tokens_map.json": j(bpe_special),
        "config.json": j({"model_type": "bart", "vocab_size": len(vocab), "d_model": 768}),
    })
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase + string.digits)
    words += list(string.punctuation) + ["##" + c for c in string.ascii_lowercase + string.digits]
    _snapshot(root, "bert-base-uncased", {
        "vocab.txt": ("\n".join(words) + "\n").encode(),
        "tokenizer_config.json": j({"do_lower_case": True, "model_max_length": 512,
                                    "tokenizer_class": "BertTokenizer"}),
        "config.json": j({"model_type": "bert", "vocab_size": len(words), "hidden_size": 768}),
    })
    return root
