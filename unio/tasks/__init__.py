"""Tasks: each a prompt plus a way to build its target and read the answer back.

A task is a :class:`Task` subclass registered with the ``@register`` decorator in its own module;
everything about it (inputs, options, target, constraints, parsing, metrics, records, pictures)
lives there, so adding a task = one module + one entry in prompts/ (or templates on the class).

A task defined outside unio registers the same way (``from unio.tasks import Task, register``),
and a package can contribute tasks through the entry-point group ``unio.tasks``, as pytest finds
its plugins::

    # pyproject.toml of the package that defines the tasks
    [project.entry-points."unio.tasks"]
    count = "my_package.count"          # a module whose @register classes are tasks (or one Task class)

Entry points are loaded the first time a task is looked up by name.

``get_task(name, **options)`` returns the registered instance, or a fresh one built with other
construction options (e.g. ``get_task("detect", max_noise=0)``).
"""
from __future__ import annotations

import inspect
import warnings
from importlib.metadata import entry_points

from ..errors import TaskError
from .base import Box, Detection, Example, Label, Task, TaskContext
from .options import Option

__all__ = ["TASKS", "get_task", "register", "task_names", "Task", "TaskContext", "Example", "Box", "Detection",
           "Label", "Option", "placeholders_by_task", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "unio.tasks"
TASKS: dict[str, Task] = {}
_plugins_loaded = False


def register(task):
    """Register a task: use as a class decorator (``@register``), or pass an instance.

    The registry holds one instance with default construction options under ``task.name``;
    registering a name again replaces it (a user's task may stand in for a built-in one).
    """
    instance = task() if inspect.isclass(task) else task
    if not isinstance(instance, Task):
        raise TaskError(f"{task!r} is not a unio Task; subclass unio.tasks.Task")
    if not instance.name:
        raise TaskError(f"{type(instance).__name__} has no name; set the class attribute `name`")
    TASKS[instance.name] = instance
    return task


def load_plugins() -> None:
    """Import the tasks that installed packages declare under the ``unio.tasks`` entry points (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not take every other task down with it
            warnings.warn(f"unio: could not load the tasks of entry point {ep.name!r} ({ep.value}): {exc}",
                          stacklevel=2)
            continue
        if inspect.isclass(obj) and issubclass(obj, Task) and obj.name not in TASKS:
            register(obj)


def task_names() -> list[str]:
    load_plugins()
    return list(TASKS)


def get_task(name: str, **options) -> Task:
    """The registered task ``name`` (a new instance when ``options`` are given)."""
    if name not in TASKS:
        load_plugins()
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


# The built-in tasks register themselves on import (their modules' @register).
from . import text, classify, detect, ground, dense, image_gen  # noqa: E402,F401,I001
