"""Steps 4-5 of Alg. 2: the critic and rewrite (one generation per selected item), the parser of its
answers and the generation backends."""
