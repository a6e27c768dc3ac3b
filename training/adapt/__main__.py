import sys

from training.adapt.command import main

sys.exit(main())
