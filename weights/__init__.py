"""The default model shipped with bgremove (installed as the package ``bgremove.weights``)."""
