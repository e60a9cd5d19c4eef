"""Every gin configurable of the project, registered in one place.

Library modules never import gin; this file wraps their config dataclasses and entry
functions so gin files can bind them. Entry points use the wrapped names from here
(e.g. `configurables.EncoderConfig()` returns the config with the gin bindings applied).

One section per owner module; keep each wrapped name equal to the class name, so gin
files read `EncoderConfig.num_layers = 17`.
"""

import gin

# Sections are added by the modules' owners below.
