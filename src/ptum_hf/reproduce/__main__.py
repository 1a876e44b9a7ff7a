"""`python -m ptum_hf.reproduce`: the same as `ptum-hf reproduce`."""

from .main import main

main()
