"""Reports: plots and pictures, and the offline demos that write a report."""
