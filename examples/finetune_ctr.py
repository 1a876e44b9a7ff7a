"""Fine-tune a PTUM model for ad click-through prediction with the Trainer (same as `ptum-hf finetune ctr`).

python examples/finetune_ctr.py --model_name_or_path outputs/pretrain/model --label_fraction 0.2
"""

import sys

from ptum_hf.cli import cmd_finetune

if __name__ == "__main__":
    cmd_finetune(["ctr", *sys.argv[1:]])
