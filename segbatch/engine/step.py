"""The model step: what every actor does to a batch, whatever the source (sent to each actor once, with the run's job)."""

from __future__ import annotations

from dataclasses import dataclass

from segbatch.engine.job import RunConfig
from segbatch.engine.sharing import memory_share


@dataclass(frozen=True)
class ModelStep:
    """The settings of the model step, the same for every input of a run: they are not facts about a source.

    The source decides only what its items need from it (`outputs`, the
    float dtype of those, and how many items go to the model at once);
    the run's options decide the rest.
    """

    checkpoint: str  # absolute location of the checkpoint every actor loads
    threads: int  # torch threads per actor
    samples: int
    seed: int
    precision: str  # fp32 | fp16 | bf16
    float_dtype: str  # the dtype the float outputs are cast to on the device
    resize: tuple[int, int] | None  # the model runs at this size; outputs come back to the item's
    outputs: tuple[str, ...]  # what the model step hands to the placer besides labels (see segbatch.mc.predict)
    batch_size: int  # items per model call (1 where items differ in size)
    memory_share: float = 1.0  # of a GPU's sub-batch budget: actors sharing a GPU split it (`segbatch.engine.sharing`)

    @staticmethod
    def of(cfg: RunConfig, checkpoint: str, outputs: tuple[str, ...], float_dtype: str, batch_size: int, resize: tuple[int, int] | None = None) -> ModelStep:
        """The step for a run's options; the source names its outputs, their dtype, its batch size and whether it resizes."""
        return ModelStep(
            checkpoint=checkpoint,
            threads=max(1, int(cfg.cpus_per_actor)),
            samples=cfg.samples,
            seed=cfg.seed,
            precision=cfg.precision,
            float_dtype=float_dtype,
            resize=resize,
            outputs=outputs,
            batch_size=batch_size,
            memory_share=memory_share(cfg.actors_per_gpu),
        )
