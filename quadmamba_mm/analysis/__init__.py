"""Model analysis: parameter and FLOP counts with the selective scan counted."""
