"""A task's key: ``"<Model>:<pk>"``, the one name a task has across the system.

The hub, the bus, Redis's channels and streams, the locks and the limits all
index tasks by it. It is a ``str`` so that it costs a string's hash and
compares equal to the plain string Redis hands back; :class:`TaskKey` is
where it is built and taken apart, and nowhere else.
"""

from __future__ import annotations


class TaskKey(str):
    """``TaskKey("ExampleTask", 7) == "ExampleTask:7"``; ``.model`` and ``.pk`` give the parts."""

    __slots__ = ()

    def __new__(cls, model: str, pk: object) -> TaskKey:
        return super().__new__(cls, f"{model}:{pk}")

    @classmethod
    def parse(cls, text: str) -> TaskKey:
        """The key ``text`` spells; ValueError if it names no model or no id."""
        model, colon, pk = text.partition(":")
        if not (model and colon and pk):
            raise ValueError(f"Not a task key (Model:pk): {text!r}")
        return cls(model, pk)

    @property
    def model(self) -> str:
        """The task model's class name."""
        return self.partition(":")[0]

    @property
    def pk(self) -> str:
        """The task's id, as text."""
        return self.partition(":")[2]

    def __repr__(self) -> str:
        return f"TaskKey({str(self)!r})"

    def __reduce__(self) -> tuple[type[TaskKey], tuple[str, str]]:
        return TaskKey, (self.model, self.pk)
