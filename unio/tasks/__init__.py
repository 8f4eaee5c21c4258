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

from .base import Box, Detection, Example, Label, Task, TaskContext
from .options import Option
from .registry import ENTRY_POINT_GROUP, TASKS, get_task, load_plugins, placeholders_by_task, register, task_names

__all__ = ["TASKS", "get_task", "register", "task_names", "Task", "TaskContext", "Example", "Box", "Detection",
           "Label", "Option", "placeholders_by_task", "load_plugins", "ENTRY_POINT_GROUP"]

# The built-in tasks register themselves on import (their modules' @register).
from . import text, classify, detect, ground, dense, image_gen, masked, reason, video, entail, retrieve  # noqa: E402,F401,I001
