#!/usr/bin/env bash
# Car segmentation on Carvana (download it: see docs/SEGMENTATION.md), or on synthetic cars made here.
#   bash example_runs/seg_carvana.sh [quick|full|resume|eval|compare|all]   (default: quick)
# DATA_DIR (default: Dataset/Carvana if it exists, else synthetic cars written to Dataset/SyntheticCarvana),
# QUICK_EPOCHS, FULL_EPOCHS and the settings of example_runs/common.sh may be set in the environment.
source "$(dirname "$0")/common.sh"
QUICK_EPOCHS=${QUICK_EPOCHS:-3}
FULL_EPOCHS=${FULL_EPOCHS:-20}
if [ -z "${DATA_DIR:-}" ]; then
    if [ -d Dataset/Carvana/train ]; then
        DATA_DIR=Dataset/Carvana
    else
        DATA_DIR=Dataset/SyntheticCarvana
        [ -d "$DATA_DIR/train" ] || run $PYTHON -m data.make_synthetic_carvana --out "$DATA_DIR" --cars 20
    fi
fi

# A small UNet at 64x96: a first Dice in a minute on a CPU.
recipe_quick() {
    run $PYTHON trainer_seg_on_carvana.py --output_dir "$OUT" --proj_name SegQuick --data_dir "$DATA_DIR" \
        --epochs "$QUICK_EPOCHS" --image_size 64 96 --base_channels 8 $EXTRA
}

# The default recipe: UNet at half resolution, BCE + Dice, joint augmentation.
recipe_full() {
    run $PYTHON trainer_seg_on_carvana.py --output_dir "$OUT" --proj_name SegOnCarvana --data_dir "$DATA_DIR" \
        --epochs "$FULL_EPOCHS" $EXTRA
}

# Continue the newest quick run for one more epoch.
recipe_resume() {
    run $PYTHON trainer_seg_on_carvana.py --output_dir "$OUT" --proj_name SegQuick --resume auto \
        --epochs $((QUICK_EPOCHS + 1)) $EXTRA
}

# Dice and IoU of the newest quick run's best checkpoint, with pictures of a few predictions.
recipe_eval() {
    local run_dir
    run_dir=$(newest_run SegQuick)
    run $PYTHON eval_seg_on_carvana.py --model_path "$run_dir/UNet_best_ckpt.pth" --gpu_devices cpu \
        --viz --viz_every 4 --save_path "$run_dir/viz"
}

# UNet++ against the UNet: train it, then the runs table and the config difference.
recipe_compare() {
    local unet other
    unet=$(newest_run SegQuick)
    run $PYTHON trainer_seg_on_carvana.py --output_dir "$OUT" --proj_name SegQuick --data_dir "$DATA_DIR" \
        --epochs "$QUICK_EPOCHS" --image_size 64 96 --base_channels 8 --model_type UNetPlusPlus $EXTRA
    other=$(newest_run SegQuick)
    show_comparison SegQuick "$unet" "$other"
}

dispatch "$@"
