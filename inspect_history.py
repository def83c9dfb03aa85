"""Plot runs' metrics.csv (loss, val metrics, learning rate) against the step, runs overlaid.

python inspect_history.py Results/Vanilla/<run>
python inspect_history.py Results/Vanilla/<a> Results/Vanilla/<b> --out cmp.png --metrics val_loss,val_top1
"""

from base.cli import exit_fast, main
from utils.history import HistoryInspector

if __name__ == "__main__":
    exit_fast(main(HistoryInspector))
