"""The one exception type of the binding."""


class TinyNNError(RuntimeError):
    """A libtinynn call failed; the message is the library's own diagnosis.

    ``code`` is the negative status (``TNN_E*`` in native/tinynn.h), or None
    for a function that returned a NULL handle.
    """

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code
