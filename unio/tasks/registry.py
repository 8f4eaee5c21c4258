"""The task registry: ``@register``, the ``unio.tasks`` entry points, look-up by name."""
from __future__ import annotations

import inspect
import warnings
from importlib.metadata import entry_points

from ..errors import TaskError

__all__ = ["TASKS", "register", "get_task", "task_names", "load_plugins", "placeholders_by_task",
           "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "unio.tasks"
TASKS: dict = {}  # name -> Task instance
_plugins_loaded = False


def register(task):
    """Register a task: use as a class decorator (``@register``), or pass an instance.

    The registry holds one instance with default construction options under ``task.name``;
    registering a name again replaces it (a user's task may stand in for a built-in one).
    """
    instance = task() if inspect.isclass(task) else task
    if not all(callable(getattr(instance, m, None)) for m in ("build", "parse", "metric")):
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
        if inspect.isclass(obj) and callable(getattr(obj, "build", None)) and obj.name not in TASKS:
            register(obj)


def task_names() -> list[str]:
    load_plugins()
    return list(TASKS)


def get_task(name: str, **options):
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
