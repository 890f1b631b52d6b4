import sys

from diffmm import memory

memory.configure()  # before torch loads (the allocator reads its settings then)

from diffmm.cli import main  # noqa: E402


def entry() -> None:
    """The ``diffmm`` console script: the same as ``python -m diffmm`` (this module sets the allocator
    option above before torch loads)."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
