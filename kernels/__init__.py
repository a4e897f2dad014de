# The built-in kernel files. This folder is installed as the package
# ``convcli.kernels_data`` so the kernels resolve from a wheel, not only a checkout.
