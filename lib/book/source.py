"""Show the library code a chapter relies on, straight from its source."""

import inspect

from IPython.display import Markdown


def show_source(obj: object) -> Markdown:
    """Return the source of a ``lib`` function, class or module as a highlighted code block.

    The code the reader sees is the code the tests check: it is read from the file, never copied.
    """
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj)):
        raise TypeError(f"obj must be a function, class or module, got {type(obj).__name__}")
    module = inspect.getmodule(obj)
    if module is None or not module.__name__.startswith("lib."):
        raise ValueError(f"obj must come from the book's library `lib`, got {getattr(obj, '__qualname__', obj)!r}")
    return Markdown(f"```python\n{inspect.getsource(obj).rstrip()}\n```")
