"""What a run reports: metrics, score rankings (AUROC), metrics.json, plots and report.html."""
