"""Recover methods, one module each, registered by name (see :mod:`wmdd.recover.methods.registry`).

Importing this package registers every shipped method.
"""

from wmdd.recover.methods import dance, ddm, dm, medoids, random_real, sre2l, wmdd
from wmdd.recover.methods.registry import (
                                      NEEDS,
                                      Optimisation,
                                      RecoverMethod,
                                      Resources,
                                      add_method_arguments,
                                      get_method,
                                      method_names,
                                      register_method,
                                      resolve_method_args,
)

__all__ = ["NEEDS", "Optimisation", "RecoverMethod", "Resources", "add_method_arguments", "get_method",
           "method_names", "register_method", "resolve_method_args", "dance", "ddm", "dm", "medoids", "random_real",
           "sre2l",
           "wmdd"]
