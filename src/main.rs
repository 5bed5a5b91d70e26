fn main() {
    println!("natgw");
}
