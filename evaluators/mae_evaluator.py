"""Evaluate an MAE checkpoint: reconstruction loss, k-NN top-1 of its encoder, reconstruction figures."""

import torch

from base.evaluator import EvaluatorBase, add_viz_argument
from trainers.mae_trainer import MAETrainer
from utils.tta import refuse_tta_argument


class MAEEvaluator(EvaluatorBase):
    """Report the reconstruction loss and k-NN top-1 on a split; ``--viz`` saves a figure of reconstructions."""

    PROG = "eval_mae.py"
    trainer_class = MAETrainer

    @classmethod
    def add_arguments(cls, parser):
        super().add_arguments(parser)
        add_viz_argument(parser, "save image | masked | reconstruction for the split's first --num_viz images")
        refuse_tta_argument(
            parser, cls.PROG, "scores reconstructions and k-NN features, no class probabilities to average"
        )

    def evaluate(self):
        task, a = self.task, self.args
        torch.manual_seed(task.args.seed)  # the masks are random: the same ones at every evaluation
        metrics = task.validate(task.raw_model, task.loaders[a.split])
        print(f"{a.split} split, {len(task.datasets[a.split])} images, mask ratio {task.args.mask_ratio}:")
        print("  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        results = {**metrics, "num_samples": len(task.datasets[a.split]), "mask_ratio": task.args.mask_ratio}
        if a.viz:
            results["figure"] = self.save_figure()
            print(f"wrote {results['figure']}")
        print(f"wrote {self.output_path('.json')}")
        return results

    def save_figure(self):
        """``<checkpoint stem>_recon_<split>.png``: the first ``--num_viz`` (at least 1) images of the split."""
        from utils.plots import save_reconstruction_figure

        task = self.task
        count = max(1, task.args.num_viz)
        pixels = torch.stack(
            [task.datasets[self.args.split][i][0] for i in range(min(count, len(task.datasets[self.args.split])))]
        )  # uint8 (n, C, H, W)
        images = task.to_device(pixels)  # normalised as validation normalises them
        torch.manual_seed(task.args.seed)
        pred, mask = task.model(images)
        masked, pasted = task.model.reconstruct(images, pred.float(), mask)
        # Back to [0, 1] with the run's statistics (hidden patches, 0 in model units, show the mean colour).
        mean = torch.tensor(task.inputs.mean, device=images.device).view(-1, 1, 1)
        std = torch.tensor(task.inputs.std, device=images.device).view(-1, 1, 1)
        rows = [
            [(t.float() * std + mean).clamp(0, 1).cpu() for t in triple]
            for triple in zip(images.float(), masked, pasted)
        ]
        path = self.output_path(".png", kind="recon")
        save_reconstruction_figure(rows, path)
        return path
