"""Reproduce the PTUM paper's tables and figures on MovieLens-100K and synthetic data; writes `results/`.

    python examples/reproduce_paper.py                      # the full run
    python examples/reproduce_paper.py --quick --output_dir /tmp/reproduce
    python examples/reproduce_paper.py --experiments table2,baselines --presets hsa --repeats 3

The same as `ptum-hf reproduce ...`; `--help` lists every option (the code: `ptum_hf/reproduce/`).
"""

from ptum_hf.reproduce import main

if __name__ == "__main__":
    main()
