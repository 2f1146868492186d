// TEMPORARY (replaced by the config branch)
