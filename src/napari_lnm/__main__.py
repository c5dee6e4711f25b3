import sys

from napari_lnm.cli import main

sys.exit(main())
