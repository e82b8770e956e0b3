"""deepprior: restore damaged photographs with the Deep Image Prior.

An untrained convolutional network f(theta, z) is fitted to the one degraded image through the
task's degradation operator; the network's structure, with well-timed stopping, is the prior.

>>> from deepprior import restore, load_image, tasks
>>> result = restore(load_image("photo.png"), tasks.SuperResolution(scale=4))  # doctest: +SKIP
>>> result.save("photo_x4.png")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from . import tasks  # noqa: E402
from .errors import DeepPriorError  # noqa: E402
from .images import Image, load_image, save_image  # noqa: E402
from .restoration import Result, restore  # noqa: E402

__all__ = ["restore", "load_image", "save_image", "tasks", "Image", "Result", "DeepPriorError", "__version__"]
