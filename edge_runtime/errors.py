"""Errors a user can act on. The CLI prints their message on one line and exits 1."""


class EdgeRuntimeError(Exception):
    """Base class: the message is a one-line reason fit for a terminal."""


class BundleError(EdgeRuntimeError):
    """A bundle is malformed, tampered with, not signed by a trusted key, or not the kind of model asked for."""


class StoreError(EdgeRuntimeError):
    """The local model store cannot do what was asked (unknown model, nothing to roll back to...)."""


class ConfigError(EdgeRuntimeError):
    """The configuration is invalid."""


class InputError(EdgeRuntimeError):
    """A request's input is invalid (empty text, wrong type, too long...)."""
