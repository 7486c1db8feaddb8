import sys

from trt_core.cli import main

sys.exit(main())
