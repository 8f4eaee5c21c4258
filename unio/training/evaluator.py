"""The held-out evaluation ``unio train`` runs every ``train.eval_every`` steps (and at the end):
the numbers ``unio eval`` reports, for the tasks each ``data.eval`` source can serve."""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..data.formats import open_source
from ..errors import RecipeError
from ..evaluate import evaluate
from ..model import UnioForConditionalGeneration
from ..model.lora import copy_lora_structure
from ..pipeline import Pipeline
from ..tasks import get_task

__all__ = ["Evaluator"]


class Evaluator:
    """Periodic held-out evaluation through :func:`unio.evaluate.evaluate` (each task's canonical
    prompt, generation through the Pipeline, parse and metric: the numbers ``unio eval`` reports).

    Rank 0 evaluates while the others wait. Under ZeRO-3 no rank holds whole weights, so all ranks
    first gather them, parameter by parameter, into a plain copy of the model on rank 0. The global
    RNG state is left as it was, so evaluating never changes the training that follows.
    """

    def __init__(self, recipe: dict, tasks: list[str], rank: int, zero3: bool, explicit: bool):
        self.n, self.rank, self.zero3 = recipe["train"]["eval_n"], rank, zero3
        self.plan: list[tuple[dict, list[str]]] = []  # (data entry, the tasks it can serve)
        for i, spec in enumerate(recipe["data"]["eval"]):
            source = open_source(spec, recipe["data"]["on_bad_record"])
            samples = [source[j] for j in range(min(len(source), 50))]
            served = [t for t in tasks if any(get_task(t).can_build(x) for x in samples)]
            if explicit and len(served) < len(tasks):  # fail now, not at the first evaluation
                missing = sorted(set(tasks) - set(served))
                raise RecipeError(f"data.eval[{i}] cannot serve the task(s) {missing}: its samples lack what they "
                                  "need (captions, questions, boxes, depth, ...); change data.eval_tasks")
            if served:
                self.plan.append((spec, served))

    def __call__(self, engine, ctx, step: int) -> dict[str, float]:
        scores: dict[str, float] = {}
        devices = [engine.device] if torch.device(engine.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            model = self._whole_model(engine) if self.zero3 else engine.module
            if self.rank == 0:
                was_training = model.training
                model.eval()
                pipe = Pipeline(model, ctx, {"step": step})
                for k, (spec, tasks) in enumerate(self.plan):
                    results = evaluate(pipe, spec, tasks=tasks, n=self.n, progress=False)
                    prefix = f"eval{k}/" if len(self.plan) > 1 else ""
                    for task, metrics in results.items():
                        if task == "run":
                            continue
                        for key, value in metrics.items():
                            if key not in ("n", "seconds", "bad_samples") and isinstance(value, (int, float)):
                                scores[f"{prefix}{task}/{key}"] = float(value)
                model.train(was_training)
        dist.barrier()
        return scores

    def _whole_model(self, engine):
        """Rank 0: a full copy of the ZeRO-3 partitioned model (None elsewhere); a collective."""
        import deepspeed  # already imported (by the engine that runs ZeRO-3), with its accelerator chosen

        module = engine.module
        copy = copy_lora_structure(module, UnioForConditionalGeneration(module.config)) if self.rank == 0 else None
        target = dict(copy.named_parameters()) if copy is not None else {}
        for name, param in module.named_parameters():
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if copy is not None:
                    target[name].data.copy_(param.data.float())
        if copy is not None:
            copy.to(engine.device, next(module.parameters()).dtype)
        return copy
