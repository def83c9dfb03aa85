"""What the root entry scripts call: parse, run, turn input errors into one line."""
import sys

from base.config import ConfigError
from base.errors import UserError


def main(cls, argv=None):
    """Build ``cls`` from ``argv`` (trainer or evaluator) and call its ``run()``.

    Returns:
        the process exit status: 0 on success, 1 for a :class:`UserError`,
        2 for a bad flag (argparse exits with 2 itself while parsing),
        130 after Ctrl-C (the trainer has already written its checkpoint).
        With ``--debug`` input errors propagate with their traceback.
    """
    obj = cls.from_argv(argv)
    prog = getattr(cls, "PROG", None) or cls.__name__
    try:
        obj.run()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UserError, ConfigError) as exc:
        if getattr(obj.args, "debug", False):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    return 0
