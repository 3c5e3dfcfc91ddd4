"""Dense metric depth from a camera and a LiDAR, as a ROS 2 package.

Everything outside ``node.py``, ``messages.py`` and the bag tools is plain numpy/torch, so the
node, the offline tools, the demo, evaluation and training share one code path.
"""

__version__ = "0.1.0"
