from sdxl.cli import main

raise SystemExit(main())
