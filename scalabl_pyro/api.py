"""The public entry point: :class:`ScalaBL`, a Bayesian LoRA model in a few lines.

    from scalabl_pyro import ScalaBL, ScalaBLConfig, TrainConfig, load_task

    sbl = ScalaBL.from_base(ScalaBLConfig(base_model="smollm2-135m", guide="mean_field"))
    sbl.fit(load_task("arc_easy", "train"), TrainConfig(steps=200, lr=1e-3))
    print(sbl.evaluate(load_task("arc_easy", "validation"), num_samples=10))
    sbl.save_pretrained("runs/arc-easy")

The class wires the pieces together and delegates: the Pyro model
(``model.py``), the guide (``guides.py``), training (``train.py``),
prediction (``predict.py``), checkpoint files (``checkpoint.py``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pyro
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scalabl_pyro import __version__
from scalabl_pyro import checkpoint as ckpt
from scalabl_pyro.adapters import SubspaceLoRA
from scalabl_pyro.config import ScalaBLConfig
from scalabl_pyro.data.examples import MCDataset
from scalabl_pyro.errors import ScalaBLError
from scalabl_pyro.formats import TaskFormat, make_format
from scalabl_pyro.guides import build_guide, count_free_parameters
from scalabl_pyro.model import ScalaBLModel
from scalabl_pyro.predict import Prediction, predict
from scalabl_pyro.train import TrainConfig, Trainer, TrainHistory

log = logging.getLogger(__name__)


class ScalaBL:
    """A LoRA-adapted causal LM with a Gaussian posterior over its subspace latents."""

    def __init__(
        self,
        config: ScalaBLConfig,
        base_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        peft_model: PeftModel | None = None,
    ) -> None:
        pyro.settings.set(module_local_params=True)
        self.config = config
        self.tokenizer = tokenizer
        self.device = next(base_model.parameters()).device
        class_ids = None
        if config.task_format == "letter":
            class_ids = self._letter_format(config.num_classes).class_token_ids.to(self.device)
        self.subspace = SubspaceLoRA(
            base_model,
            rank=config.rank,
            alpha=config.alpha,
            dropout=config.dropout,
            target_modules=config.target_modules,
            class_token_ids=class_ids,
            svd_init=peft_model is None,
            seed=config.seed,
            peft_model=peft_model,
        )
        self.model = ScalaBLModel(self.subspace, prior_scale=config.prior_scale)
        self.guide = build_guide(
            config.guide,
            self.model,
            self.subspace.init_values,
            init_scale=config.init_scale,
            low_rank=config.guide_rank,
        )
        with torch.no_grad():
            self.guide()  # build the variational parameters now
        self.guide.to(self.device)
        self.history = TrainHistory()
        self.train_config: TrainConfig | None = None
        self._trainer: Trainer | None = None

    # ----------------------------------------------------------- construction
    @classmethod
    def from_base(cls, config: ScalaBLConfig | None = None, **overrides) -> ScalaBL:
        """Load the base model named in the config (hub id, local dir or embedded alias)."""
        from scalabl_pyro.loading import load_base_model

        config = replace(config or ScalaBLConfig(), **overrides)
        model, tok = load_base_model(
            config.base_model,
            dtype=config.dtype,
            device=config.device,
            trust_remote_code=config.trust_remote_code,
        )
        return cls(config, model, tok)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        base_model: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
    ) -> ScalaBL:
        """Rebuild a saved model: base model + peft adapter + guide (+ head)."""
        from scalabl_pyro.loading import load_base_model

        path = Path(path)
        meta = ckpt.read_config(path)
        config = ScalaBLConfig.from_dict(meta["config"])
        if base_model is not None:
            config = replace(config, base_model=base_model)
        config = replace(config, device=device, dtype=dtype)
        model, tok = load_base_model(
            config.base_model,
            dtype=dtype,
            device=device,
            trust_remote_code=config.trust_remote_code,
        )
        return cls.from_parts(path, config, model, tok)

    @classmethod
    def from_parts(
        cls,
        path: str | Path,
        config: ScalaBLConfig,
        base_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
    ) -> ScalaBL:
        """Load a checkpoint onto an already loaded base model (tests, custom loading)."""
        path = Path(path)
        meta = ckpt.read_config(path)
        peft_model = PeftModel.from_pretrained(
            base_model, path / ckpt.ADAPTER_DIR, is_trainable=True
        )
        obj = cls(config, base_model, tokenizer, peft_model=peft_model)
        expected = meta.get("site_names")
        if expected is not None and expected != obj.model.site_names:
            raise ScalaBLError(
                f"{path}: the checkpoint's latent sites do not match this base model "
                f"({len(expected)} vs {len(obj.model.site_names)}); load it on the base model "
                f"it was trained on ({meta['config'].get('base_model')})"
            )
        state = ckpt.load_tensors(path / ckpt.GUIDE_FILE)
        obj.guide.load_state_dict({k: v.to(obj.device) for k, v in state.items()})
        if obj.subspace.head is not None:
            head = ckpt.load_tensors(path / ckpt.HEAD_FILE)
            with torch.no_grad():
                obj.subspace.head.lora_A.copy_(head["lora_A"])
                obj.subspace.head.lora_B.copy_(head["lora_B"])
        if (path / ckpt.HISTORY_FILE).is_file():
            obj.history = TrainHistory.from_dict(json.loads((path / ckpt.HISTORY_FILE).read_text()))
        if "train_config" in meta:
            obj.train_config = TrainConfig(**meta["train_config"])
        obj.model.num_data = meta.get("num_data")
        return obj

    # -------------------------------------------------------------- formats
    def _letter_format(self, num_classes: int) -> TaskFormat:
        return make_format(
            "letter",
            self.tokenizer,
            num_classes,
            max_length=self.config.max_length,
            answer_tokens=self.config.answer_tokens,
            chat_template=self.config.chat_template,
        )

    def format_for(self, data: MCDataset) -> TaskFormat:
        """The task format for a data set (choice scoring adapts to its number of choices)."""
        if self.config.task_format == "letter":
            if data.num_classes > self.config.num_classes:
                raise ScalaBLError(
                    f"{data.name} has up to {data.num_classes} choices but the model was built "
                    f"for {self.config.num_classes}; set num_classes={data.num_classes}"
                )
            return self._letter_format(self.config.num_classes)
        return make_format(
            "choice",
            self.tokenizer,
            max(data.num_classes, 2),
            max_length=self.config.max_length,
            normalization=self.config.normalization,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------- training
    def fit(
        self,
        train: MCDataset,
        config: TrainConfig | None = None,
        *,
        validation: MCDataset | None = None,
        output_dir: str | Path | None = None,
        resume: bool = False,
        eval_samples: int = 4,
    ) -> TrainHistory:
        """Train LoRA factors and the variational posterior on ``train`` (SVI).

        With ``output_dir`` a checkpoint is written every
        ``config.checkpoint_every`` steps and at the end; ``resume=True``
        continues from the optimizer state saved there.
        """
        config = config or TrainConfig()
        self.train_config = config
        trainer = Trainer(
            self.model,
            self.guide,
            self.config.guide,
            self.format_for(train),
            train,
            config,
            self.device,
        )
        self._trainer = trainer
        if resume:
            if output_dir is None:
                raise ScalaBLError("resume=True needs output_dir (the checkpoint to resume)")
            state = ckpt.load_trainer_state(output_dir)
            if state is None:
                raise ScalaBLError(
                    f"{output_dir} has no {ckpt.TRAINER_FILE}; it cannot be resumed (train anew)"
                )
            trainer.load_state_dict(state, self.history)
        else:
            trainer.history = self.history = TrainHistory()

        def evaluate(step: int) -> dict:
            assert validation is not None
            return self.evaluate(validation, num_samples=eval_samples, progress=False)

        def checkpoint(step: int) -> None:
            if output_dir is not None:
                self.save_pretrained(output_dir)

        try:
            self.history = trainer.run(evaluate if validation is not None else None, checkpoint)
        finally:
            self.history = trainer.history
        if output_dir is not None:
            self.save_pretrained(output_dir)
        return self.history

    # ----------------------------------------------------------- prediction
    def predict(
        self,
        data: MCDataset,
        *,
        num_samples: int = 10,
        mode: str = "bma",
        batch_size: int = 8,
        max_rows: int = 256,
        seed: int | None = 0,
        progress: bool = True,
    ) -> Prediction:
        """BMA over ``num_samples`` posterior draws (or the posterior mean with mode='mean')."""
        return predict(
            self.model,
            self.guide,
            self.format_for(data),
            data,
            num_samples=num_samples,
            mode=mode,
            batch_size=batch_size,
            max_rows=max_rows,
            seed=seed,
            device=self.device,
            progress=progress,
        )

    def evaluate(self, data: MCDataset, **predict_kwargs) -> dict[str, float]:
        """Accuracy, ECE, NLL and Brier on ``data`` (keyword args go to :meth:`predict`)."""
        return self.predict(data, **predict_kwargs).metrics()

    # --------------------------------------------------------------- saving
    def save_pretrained(self, path: str | Path) -> Path:
        """Write a checkpoint directory atomically (see ``checkpoint.py``)."""
        meta = {
            "library": "scalabl-pyro",
            "version": __version__,
            "config": self.config.to_dict(),
            "guide_family": self.config.guide,
            "prior_scale": self.config.prior_scale,
            "site_names": self.model.site_names,
            "target_modules": list(self.config.target_modules),
            "num_data": self.model.num_data,
            "num_variational_parameters": self.num_variational_parameters,
        }
        if self.config.task_format == "letter":
            fmt = self._letter_format(self.config.num_classes)
            meta["class_tokens"] = list(fmt.answer_tokens)
            meta["class_token_ids"] = fmt.class_token_ids.tolist()
        if self.train_config is not None:
            meta["train_config"] = self.train_config.to_dict()
        trainer = self._trainer

        def fill(tmp: Path) -> None:
            self.subspace.peft_model.save_pretrained(str(tmp / ckpt.ADAPTER_DIR))
            ckpt.save_tensors(tmp / ckpt.GUIDE_FILE, self.guide.state_dict())
            if self.subspace.head is not None:
                ckpt.save_tensors(
                    tmp / ckpt.HEAD_FILE,
                    {"lora_A": self.subspace.head.lora_A, "lora_B": self.subspace.head.lora_B},
                )
            ckpt.write_json(tmp / ckpt.CONFIG_FILE, meta)
            ckpt.write_json(tmp / ckpt.HISTORY_FILE, self.history.to_dict())
            if trainer is not None:
                torch.save(trainer.state_dict(), tmp / ckpt.TRAINER_FILE)

        return ckpt.write_atomic_dir(path, fill)

    # ---------------------------------------------------------- inspection
    @property
    def num_variational_parameters(self) -> int:
        """Free parameters of the posterior over the latents (2 r L for mean-field)."""
        return count_free_parameters(self.guide)

    def summary(self) -> str:
        """One paragraph describing the model (layers, latents, parameter counts)."""
        sub = self.subspace
        return (
            f"ScalaBL on {self.config.base_model}: {len(sub.site_names)} adapted layers "
            f"(targets {', '.join(self.config.target_modules)}), rank {sub.rank}, "
            f"{sub.num_latents} latent dims; guide {self.config.guide} with "
            f"{self.num_variational_parameters} variational parameters; "
            f"{sub.num_lora_parameters()} LoRA parameters; prior sigma_p={self.config.prior_scale}"
        )
