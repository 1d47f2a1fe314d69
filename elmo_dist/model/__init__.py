"""The ELMo biLM: options, weights, char-CNN, LSTM stacks and the public ``Elmo`` class."""
