"""Command-line flags SDFix adds to the WebUI (the WebUI calls ``preload(parser)`` before parsing)."""


def preload(parser):
    parser.add_argument(
        "--sdfix-disable",
        action="store_true",
        help="SDFix: load the extension but apply no fix and patch nothing",
    )
    parser.add_argument(
        "--sdfix-vae-dtype",
        "--sdfix-decode-dtype",  # its older name
        dest="sdfix_vae_dtype",
        choices=["fp32", "auto"],
        default=None,
        help="SDFix: VAE dtype for its decodes and encodes (fp32, or auto = leave the WebUI's); overrides the setting",
    )
