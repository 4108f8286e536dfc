"""openl3's exception, under openl3's module and class name (`openl3.openl3_exceptions`)."""


class OpenL3Error(ValueError):
    """Invalid input to the openl3 API (argument, file or array), as openl3 raises it.

    A ValueError (openl3's derives from Exception directly): `except OpenL3Error` and
    `except Exception` catch it as in openl3.
    """
