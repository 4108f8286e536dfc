"""openl3's warning, under openl3's module and class name (`openl3.openl3_warnings`)."""


class OpenL3Warning(UserWarning):
    """Audio shorter than a window, an all-zero input, and the like (as openl3 warns)."""
