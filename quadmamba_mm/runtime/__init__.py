"""Running the tools: the shared command line, process groups, the toolbox of a config, image
reading and the environment check."""
