#!/usr/bin/env bash
# Classification on scikit-learn's handwritten digits (bundled: no download).
#   bash example_runs/vanilla_digits.sh [quick|full|resume|eval|compare|all]   (default: quick)
# QUICK_EPOCHS, FULL_EPOCHS and the settings of example_runs/common.sh may be set in the environment.
source "$(dirname "$0")/common.sh"
QUICK_EPOCHS=${QUICK_EPOCHS:-3}
FULL_EPOCHS=${FULL_EPOCHS:-30}

# A few epochs of the MLP: a first result in seconds.
recipe_quick() {
    run $PYTHON trainer_vanilla.py --output_dir "$OUT" --proj_name DigitsQuick --epochs "$QUICK_EPOCHS" $EXTRA
}

# The default recipe (30 epochs of the MLP), every scalar also in scalars.csv and TensorBoard.
recipe_full() {
    run $PYTHON trainer_vanilla.py --output_dir "$OUT" --proj_name Digits --epochs "$FULL_EPOCHS" $EXTRA
}

# Continue the newest quick run for one more epoch, in its own folder (the schedule is re-planned).
recipe_resume() {
    run $PYTHON trainer_vanilla.py --output_dir "$OUT" --proj_name DigitsQuick --resume auto \
        --epochs $((QUICK_EPOCHS + 1)) $EXTRA
}

# Evaluate the newest quick run's best checkpoint on the test split: accuracy, confusion matrix.
recipe_eval() {
    local run_dir
    run_dir=$(newest_run DigitsQuick)
    run $PYTHON eval_vanilla.py --model_path "$run_dir/Vanilla_best_ckpt.pth" --gpu_devices cpu
}

# The CNN against the MLP: train it, then the runs table, the config difference and both curves.
recipe_compare() {
    local mlp cnn
    mlp=$(newest_run DigitsQuick)
    run $PYTHON trainer_vanilla.py --output_dir "$OUT" --proj_name DigitsQuick --epochs "$QUICK_EPOCHS" \
        --model_type SmallCNN $EXTRA
    cnn=$(newest_run DigitsQuick)
    show_comparison DigitsQuick "$mlp" "$cnn"
    run $PYTHON inspect_history.py "$mlp" "$cnn" --out "$cnn/compare_mlp_cnn.png"
}

dispatch "$@"
