"""Typed run configuration: YAML files, ``--set key=value`` overrides, validation.

Every field carries its documentation. Mistakes raise :class:`ConfigError` with one line that
names the key and the fix; the CLI turns that into exit code 2.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A user mistake in configuration or command-line input (exit code 2)."""


# Decoding presets (defined in generate.py; a test keeps the two lists equal).
GenerationPreset = Literal["greedy", "balanced", "creative", "beam"]
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class QualityConfig(_Strict):
    min_ingredients: int = Field(2, ge=0, description="Drop recipes with fewer ingredient lines.")
    min_directions: int = Field(1, ge=0, description="Drop recipes with fewer non-empty steps.")
    max_title_chars: int = Field(120, ge=1, description="Drop recipes whose title is longer.")
    max_line_chars: int = Field(600, ge=1, description="Drop recipes with an ingredient or step longer.")
    max_total_chars: int = Field(4000, ge=1, description="Drop recipes whose formatted text is longer.")
    min_quality: float = Field(0.5, ge=0.0, le=1.0, description="Drop recipes scoring below this.")
    dedupe: bool = Field(True, description="Drop recipes whose normalised content was already seen.")
    junk_words: list[str] = Field(
        default_factory=lambda: ["lol", "yum", "yummy", "xoxo", "omg", "mate"],
        description="Whole words that mark chatter; each occurrence lowers the quality score.",
    )


class DataConfig(_Strict):
    path: str | None = Field(None, description="CSV / JSONL file, HF dataset dir or hub id; None = bundled.")
    format: Literal["auto", "csv", "jsonl", "hf"] = Field("auto", description="Source format.")
    hf_split: str = Field("train", description="Split to read from a Hugging Face dataset.")
    max_recipes: int | None = Field(None, ge=1, description="Read at most this many rows (debugging).")
    val_fraction: float = Field(0.15, description="Share of recipes in validation, in (0, 1).")
    split_seed: int = Field(1234, description="Seed of the content-hash train/validation split.")
    max_prompt_tokens: int = Field(64, ge=4, description="Prompt (ingredient list) token budget.")
    max_target_tokens: int = Field(256, ge=8, description="Target (recipe) token budget.")
    mask_prompt: bool = Field(True, description="Causal LM: exclude prompt tokens from the loss.")
    cache_dir: str | None = Field(None, description="Token cache; default $CHEFGENIUS_CACHE or ~/.cache.")
    quality: QualityConfig = Field(default_factory=QualityConfig)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        return self


class ModelConfig(_Strict):
    name_or_path: str | None = Field(None, description="HF model dir or hub id (GPT-2, T5, FLAN-T5...).")
    from_scratch: Literal["gpt2", "t5"] | None = Field(
        "gpt2", description="Build this architecture from a preset instead of loading weights."
    )
    preset: Literal["micro", "tiny", "small", "base", "large"] = Field(
        "tiny", description="Size preset for from_scratch (micro: for smoke tests; base: ~25M parameters with an "
        "8k vocabulary, large: ~160M, for a GPU).")
    vocab_size: int = Field(2048, ge=300, description="BPE vocabulary trained for from_scratch models.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout of from_scratch models.")
    use_lora: bool = Field(False, description="Train LoRA adapters only (needs the 'lora' extra).")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    lora_target_modules: list[str] | None = Field(None, description="Module names; None = per family.")
    compile: bool = Field(False, description="torch.compile the model.")
    sharding: Literal["ddp", "fsdp"] = Field(
        "ddp", description="Multi-process: ddp replicates the model; fsdp (FSDP2 fully_shard) shards model and "
        "optimizer state over the processes, for models that do not fit one device.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if (self.name_or_path is None) == (self.from_scratch is None):
            raise ValueError(
                "set exactly one of model.name_or_path and model.from_scratch "
                "(use --set model.from_scratch=null with a name_or_path)"
            )
        return self


class TrainingConfig(_Strict):
    seed: int = Field(42, description="Seed of model init, dropout and data order (plus rank).")
    num_epochs: int = Field(30, ge=1, description="Passes over the training split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Recipes per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(2e-3, gt=0.0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW decay (never on biases and norms).")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    adam_eps: float = Field(1e-8, gt=0.0, description="AdamW epsilon.")
    schedule: Literal["linear", "cosine", "constant"] = Field("cosine", description="LR after warmup.")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup length in optimizer steps.")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Final LR as a share of the peak.")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Clip gradients to this norm.")
    precision: Literal["fp32", "bf16", "fp16", "bf16-pure"] = Field(
        "fp32", description="bf16/fp16 = autocast over fp32 master weights; bf16-pure casts the model."
    )
    group_by_length: bool = Field(True, description="Batch similar lengths together (deterministic).")
    shuffle: bool = Field(True, description="Shuffle the order of each epoch.")
    device: str = Field("auto", description="auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")
    determinism: Literal["auto", "default", "strict"] = Field(
        "auto", description="strict: torch.use_deterministic_algorithms(True) and cuBLAS workspace (bit-identical "
        "resume on CUDA); default: the fastest kernels; auto: strict on CUDA, default elsewhere (CPU kernels are "
        "deterministic already).")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch default.")
    copy_weight: float = Field(1.0, ge=1.0, description="Loss weight of target tokens that occur in the prompt's "
                               "ingredient list (1 = plain loss); > 1 teaches the model to use what it was given.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Share of each target's probability "
                                   "spread over the vocabulary in the training loss (the logged training loss "
                                   "includes it; validation loss stays plain cross-entropy).")
    reduction: Literal["auto", "ordered", "allreduce"] = Field(
        "auto", description="Multi-process gradient sum: ordered (adds ranks in rank order, bit-exact resume "
        "with any number of processes), allreduce (NCCL/gloo tree), auto = ordered on CPU or with strict "
        "determinism (the CUDA default), else allreduce.")
    dist_timeout_s: float = Field(300.0, ge=10.0, description="Multi-process: how long a collective waits for a "
                                  "peer before the job fails (torch's default is 30 minutes).")
    elastic: bool = Field(False, description="Accept resuming with another number of processes (keeps the "
                          "global batch by changing grad_accum); same as --allow-change world_size.")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"training.device must be auto, cpu, mps, cuda or cuda:N, got {value!r}")
        return value


class EvaluationConfig(_Strict):
    every_steps: int | None = Field(25, ge=1, description="Validate every N optimizer steps.")
    at_epoch_end: bool = Field(False, description="Also validate at the end of every epoch.")
    max_batches: int | None = Field(None, ge=1, description="Cap on validation batches per evaluation.")
    early_stopping_patience: int | None = Field(3, ge=1, description="Stop after N evals without gain.")
    early_stopping_threshold: float = Field(0.0, ge=0.0, description="Minimum loss drop that counts.")
    prompts: list[str] = Field(
        default_factory=lambda: ["chicken, rice, onion"],
        description="Ingredient lists generated for at every evaluation (logged to samples.jsonl).",
    )
    generation_preset: GenerationPreset = Field("greedy", description="Decoding preset for those samples.")
    max_new_tokens: int = Field(160, ge=1, description="Token budget of those samples.")


class CheckpointConfig(_Strict):
    every_steps: int = Field(100, ge=1, description="Checkpoint every N optimizer steps (and at the end).")
    keep_last: int = Field(3, ge=1, description="Keep the newest N checkpoints.")
    keep_best: int = Field(1, ge=0, description="Also keep the K best by validation loss.")
    on_error: Literal["stop", "continue"] = Field("stop", description="On a failed save: stop, or log and go on.")
    async_: bool = Field(True, alias="async", description="Copy the state to CPU memory at the step and write, "
                         "fsync, hash and commit it in the background.")
    when_busy: Literal["wait", "skip"] = Field(
        "wait", description="A background save comes due while the previous one is still being written: wait "
        "for it (every asked-for checkpoint exists), or skip this one (training never waits; the end and a "
        "stop always save). Logged either way.")


class LoggingConfig(_Strict):
    every_steps: int = Field(10, ge=1, description="Write a metrics.jsonl entry every N optimizer steps.")
    progress_bar: bool = Field(True, description="Progress on stderr: a live bar in a terminal, a plain line every "
                               "progress_every_s seconds when stderr is a file (sbatch, nohup).")
    progress_every_s: float = Field(30.0, gt=0, description="Seconds between progress lines when stderr is not a "
                                    "terminal.")
    tensorboard: bool = Field(False, description="Also write TensorBoard event files to the run dir.")
    wandb: bool = Field(False, description="Also log to Weights & Biases (extra 'wandb').")
    wandb_project: str = Field("chefgenius", description="W&B project name.")


class Config(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _check(self) -> Config:
        ev = self.evaluation
        if ev.early_stopping_patience and not ev.every_steps and not ev.at_epoch_end:
            raise ValueError("evaluation.early_stopping_patience needs evaluations: set evaluation.every_steps "
                             "or evaluation.at_epoch_end=true")
        if self.training.copy_weight != 1.0 and not self.data.mask_prompt:
            raise ValueError("training.copy_weight needs data.mask_prompt=true (the prompt is found by its mask)")
        if self.model.use_lora and self.model.sharding == "fsdp":
            raise ValueError("model.sharding=fsdp with model.use_lora is not supported; use ddp for LoRA")
        if self.model.use_lora and self.training.precision == "bf16-pure":
            raise ValueError("training.precision=bf16-pure with model.use_lora is not supported; use bf16 autocast")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


# Keys whose change alters the training trajectory; resume refuses to change them silently.
TRAJECTORY_KEYS: tuple[str, ...] = (
    "data.path", "data.format", "data.hf_split", "data.max_recipes", "data.val_fraction", "data.split_seed",
    "data.max_prompt_tokens", "data.max_target_tokens", "data.mask_prompt", "data.quality",
    "model", "training.seed", "training.num_epochs", "training.max_steps", "training.batch_size",
    "training.grad_accum", "training.learning_rate", "training.weight_decay", "training.adam_betas",
    "training.adam_eps", "training.schedule", "training.warmup_steps", "training.min_lr_ratio",
    "training.max_grad_norm", "training.precision", "training.group_by_length", "training.shuffle",
    "training.copy_weight", "training.label_smoothing",
    "evaluation.every_steps", "evaluation.at_epoch_end", "evaluation.max_batches", "evaluation.early_stopping_patience",
    "evaluation.early_stopping_threshold",
)


def _format_one(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown config key '{key}' (check the spelling; see configs/default.yaml for valid keys)"
    if error["type"] == "value_error":  # our own validators already name the keys involved
        return msg
    return f"'{key}': {msg}"


def _format_validation_error(err: ValidationError) -> str:
    """Every problem at once, on one line, so a user fixes them in one go."""
    problems = list(dict.fromkeys(_format_one(e) for e in err.errors()))
    head = "invalid config: " if len(problems) == 1 else f"invalid config ({len(problems)} problems): "
    if len(problems) == 1 and problems[0].startswith("unknown config key"):
        return problems[0]
    return head + "; ".join(problems)


def _parse_scalar(text: str) -> Any:
    """YAML-parse an override value so that 16, 1e-3, true, null and [a, b] get their types."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override to a raw config dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}' must look like section.key=value")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = _parse_scalar(value)


def build_config(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (pass an existing YAML file to --config)")
        try:
            raw = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {path} is not valid UTF-8 text (byte {err.start}); save it as "
                              "UTF-8") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from None
        except OSError as err:
            raise ConfigError(f"config file {path} cannot be read ({err.strerror})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections at the top level")
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return build_config(raw)


def check_requirements(cfg: Config) -> None:
    """Optional packages the config needs, checked before any work starts (no import, no side effect)."""
    needs = [("logging.tensorboard", cfg.logging.tensorboard, "tensorboard", "tensorboard"),
             ("logging.wandb", cfg.logging.wandb, "wandb", "wandb"),
             ("model.use_lora", cfg.model.use_lora, "peft", "lora")]
    missing = [f"{key}=true needs the '{extra}' extra (pip install 'chefgenius[{extra}]')"
               for key, on, module, extra in needs if on and importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError("; ".join(missing))


def trajectory_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Leaf-level differences between two resolved configs, restricted to trajectory keys."""
    diffs: list[tuple[str, Any, Any]] = []

    def walk(prefix: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(f"{prefix}.{k}" if prefix else k, a.get(k), b.get(k))
        elif a != b:
            diffs.append((prefix, a, b))

    walk("", old, new)
    return [d for d in diffs if any(d[0] == k or d[0].startswith(k + ".") for k in TRAJECTORY_KEYS)]
