"""Fine-tune a PTUM model on age and gender with the Trainer (same as `ptum-hf finetune demographics`).

python examples/finetune_demographics.py --model_name_or_path outputs/pretrain/model --label_fraction 0.2
python examples/finetune_demographics.py --model_name_or_path outputs/pretrain/model --freeze_user_model
python examples/finetune_demographics.py --model_name_or_path outputs/pretrain/model --from_scratch
"""

import sys

from ptum_hf.cli import cmd_finetune

if __name__ == "__main__":
    cmd_finetune(["demographics", *sys.argv[1:]])
