"""A plugin that fails on import (the loader must say so in one line)."""

raise RuntimeError("this plugin is broken on purpose")
