#!/usr/bin/env bash
# ViT (and the rest of the zoo) on the ELPV solar-cell images (bundled with the elpv-dataset package).
#   bash example_runs/vit_elpv.sh [quick|full|resume|eval|compare|all]   (default: quick)
# QUICK_EPOCHS, FULL_EPOCHS and the settings of example_runs/common.sh may be set in the environment.
source "$(dirname "$0")/common.sh"
QUICK_EPOCHS=${QUICK_EPOCHS:-2}
FULL_EPOCHS=${FULL_EPOCHS:-30}

# vit_ti_16 at 32x32 on a fifth of the images: checks the set-up in a minute or two on a CPU.
recipe_quick() {
    run $PYTHON trainer_vit.py --output_dir "$OUT" --proj_name ViTQuick --epochs "$QUICK_EPOCHS" \
        --image_size 32 --train_val_sample_rate 0.2 --test_sample_rate 0.2 $EXTRA
}

# The whole recipe on the binary task: 64x64, RandAugment, Mixup/CutMix, flips, EMA (a GPU is advised).
recipe_full() {
    run $PYTHON trainer_vit.py --output_dir "$OUT" --proj_name ViT --epochs "$FULL_EPOCHS" --elpv_task binary \
        --randaugment 2 9 --mixup_alpha 0.2 --cutmix_alpha 1.0 --hflip 0.5 --vflip 0.5 --ema_decay 0.999 $EXTRA
}

# Continue the newest quick run for one more epoch.
recipe_resume() {
    run $PYTHON trainer_vit.py --output_dir "$OUT" --proj_name ViTQuick --resume auto \
        --epochs $((QUICK_EPOCHS + 1)) $EXTRA
}

# Accuracy, per-class and per-cell-type results of the newest quick run's best checkpoint.
recipe_eval() {
    local run_dir
    run_dir=$(newest_run ViTQuick)
    run $PYTHON eval_vit.py --model_path "$run_dir/vit_ti_16_best_ckpt.pth" --gpu_devices cpu
}

# resnet18 against vit_ti_16 on the same data: train it, then the runs table and the config difference.
recipe_compare() {
    local vit cnn
    vit=$(newest_run ViTQuick)
    run $PYTHON trainer_vit.py --output_dir "$OUT" --proj_name ViTQuick --epochs "$QUICK_EPOCHS" \
        --image_size 32 --train_val_sample_rate 0.2 --test_sample_rate 0.2 --model_type resnet18 $EXTRA
    cnn=$(newest_run ViTQuick)
    show_comparison ViTQuick "$vit" "$cnn"
}

dispatch "$@"
