"""What both examples print after training twice: the runs side by side, and whether the accuracies agree."""


def print_side_by_side(results):
    """results: {run name: {metric: value}}, every run with the same metrics."""
    names = list(results)
    print(f"{'':12s}" + "".join(f"{n:>14s}" for n in names))
    for key in results[names[0]]:
        print(f"{key:12s}" + "".join(f"{results[n][key]:14.4f}" for n in names))


def accuracy_difference(results):
    return abs(results["torch.nn"]["test acc %"] - results["dlkernels"]["test acc %"])


def report_agreement(results, tolerance):
    """Prints the table and the verdict; True when the test accuracies differ by at most `tolerance` points."""
    print_side_by_side(results)
    difference = accuracy_difference(results)
    agree = difference <= tolerance
    print(
        f"test accuracies {'agree' if agree else 'DISAGREE'} "
        f"(difference {difference:.2f} points, tolerance {tolerance})"
    )
    return agree
