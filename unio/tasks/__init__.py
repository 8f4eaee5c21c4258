"""Tasks: each a prompt plus a way to build its target and read the answer back.

``TASKS`` maps a task name (also its key in prompts/*.yaml) to an instance with default options;
``get_task(name, **options)`` returns it, or a fresh instance with other options (e.g.
``get_task("detect", max_noise=0)``). Adding a task = one module here + one entry in prompts/.
"""
from __future__ import annotations

from ..errors import TaskError
from .base import Box, Detection, Example, Label, Task, TaskContext
from .classify import Classify, ClassifyRegion
from .dense import Depth, Segment
from .detect import Detect
from .ground import Ground
from .image_gen import GenerateImage, Inpaint
from .text import VQA, Caption, DescribeRegion

__all__ = ["TASKS", "get_task", "register", "task_names", "Task", "TaskContext", "Example", "Box", "Detection",
           "Label", "placeholders_by_task"]

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task instance to the registry under ``task.name``."""
    if not task.name:
        raise TaskError(f"{type(task).__name__} has no name; set the class attribute `name`")
    TASKS[task.name] = task
    return task


for _cls in (Caption, VQA, Classify, Detect, Ground, DescribeRegion, ClassifyRegion, Segment, Depth,
             GenerateImage, Inpaint):
    register(_cls())


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str, **options) -> Task:
    """The registered task ``name`` (a new instance when ``options`` are given)."""
    try:
        task = TASKS[name]
    except (KeyError, TypeError):
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
    if options:
        try:
            return type(task)(**options)
        except TypeError as exc:
            raise TaskError(f"bad options for task {name!r}: {exc}") from None
    return task


def placeholders_by_task() -> dict[str, set[str]]:
    """What each registered task fills in its prompt (checked against the loaded prompts)."""
    return {name: set(task.placeholders) for name, task in TASKS.items()}

