"""The one compiled part of c4s: the int8 gallery kernel (c4s_core/gallery/_int8.c).

Optional: without a C compiler the install still succeeds and int8 search uses
torch's kernel instead (slower; `c4s_core.gallery.kernel.available()` says which).
Everything else is configured in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("c4s_core.gallery._int8", ["c4s_core/gallery/_int8.c"],
                             extra_compile_args=["-O3"], optional=True)])
