"""Building the embedded demo models: the `embedded:regional` base from drawn scenes (`regional`),
its region painter and contact sheet (`regional_check`), and the untrained demo adapters for the
random `embedded` model (`demo_adapters`). The server only loads what these write
(`covergen/embedded/`, style adapters); it never imports this package."""
